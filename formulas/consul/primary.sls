{#-
  consul.primary: single-holder services (a DB primary). Each service below is
  registered on this minion only while it holds the Consul lock
  locks/<service>/<postfix>/leader (one holder per environment), and never on
  a minion whose own checks of it are critical; elsewhere the state stands by
  (True, no changes, naming the holder) and registers nothing. See pillar.example.

  A service that pillar consul_failover:services also lists is a failover
  member: this formula includes the failover formula, which holds it (with
  consul_failover's definition, and promotes/demotes the server with the
  lock), and adds nothing of its own for it. Two single-holder states with two
  definitions of one instance would re-register it on every highstate, each
  undoing the other; and a lock taken here, without failover's promote step,
  would advertise a server that is still a replica as the primary.
-#}
{%- set conf = salt['pillar.get']('consul_primary', {}) %}
{%- set env = salt['consul.env']() %}
{%- set id_format = conf.get('id_format', '{service}@{minion_id}') %}
{%- set members = salt['pillar.get']('consul_failover:services', {}) or {} %}
{%- set deferred = (conf.get('services', {}) or {}) | select('in', members) | list %}
{%- if deferred %}
include:
  - failover
{%- endif %}

{%- for service, spec in (conf.get('services', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   if service in members %}

consul-primary-{{ service }}:
  test.succeed_without_changes:
    - name: "{{ service }} is a failover member (consul_failover:services:{{ service }}): held by the included failover formula"
{%-   else %}
{%-     set sid = spec.get('id') or id_format.format(service=service, minion_id=opts['id'], host=env.get('host') or opts['id']) %}

consul-primary-{{ service }}:
  consul.single_holder_service:
    - name: {{ service | yaml_dquote }}
    - service_id: {{ sid | yaml_dquote }}
    - env_tags: {{ conf.get('env_tags', True) | json }}
    - tags: {{ spec.get('tags', []) | json }}
    - checks: {{ spec.get('checks', []) | json }}
{%-     for key in ('address', 'port', 'meta', 'lock_key', 'lock_delay', 'lock_wait', 'wait_passing') %}
{%-       if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-       endif %}
{%-     endfor %}
{%-   endif %}
{%- endfor %}
{%- if not conf.get('services') %}

{#- Nothing to hold here: say so, and succeed (an empty SLS makes Salt exit
    non-zero, so `salt -I 'consul_env:role:db' state.apply consul.primary`
    would fail on every db minion that takes its primary from another formula). #}
consul-primary-nothing-declared:
  test.succeed_without_changes:
    - name: "consul_primary:services is empty on this minion: no single-holder service to hold"
{%- endif %}
