{#-
  failover.client: render the config of a client of a single-holder service
  (an app that talks to the DB primary) from Consul: the primary is the
  minion holding the lock locks/<service>/<postfix>/leader of this minion's
  environment, and its address and port are those of its healthy instance in
  Consul (consul.discover, env-filtered, passing only). An instance that is
  healthy but not the lock holder's (a stale former primary) is never chosen.

  While no healthy primary exists (mid-failover) the config is left as it is
  and the state says so; the failover orchestration re-renders it once a
  replica has been promoted.

  Pillar consul_failover:clients, see pillar.example:
    consul_failover:
      clients:
        db:
          path: /etc/myapp/db.conf        # {minion_id} and {service} are substituted
          source: salt://failover/files/client.conf.jinja   # the default
          mode: '0644'
          reload: {cmd: systemctl reload myapp}             # optional, on change
-#}
{%- from "failover/map.jinja" import lock_key %}
{%- set conf = salt['pillar.get']('consul_failover', {}) %}
{%- set env = salt['consul.env']() %}
{%- set me = opts['id'] %}

{%- for service, spec in (conf.get('clients', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   set key = lock_key(service, spec, env.get('postfix')) %}
{%-   set path = spec.get('path', '/etc/' ~ service ~ '-primary.conf').format(minion_id=me, service=service) %}
{%-   set holder = salt['consul.lock_holder'](key, consistency='consistent') %}
{%-   set holder_id = (holder or {}).get('value') %}
{%-   set found = [] %}
{%-   if holder_id %}
{%-     for inst in salt['consul.discover'](service, passing=True) %}
{%-       if (inst.get('meta') or {}).get('salt_minion') == holder_id %}
{%-         do found.append(inst) %}
{%-       endif %}
{%-     endfor %}
{%-   endif %}

{%-   if found %}

failover-client-{{ service }}:
  file.managed:
    - name: {{ path | yaml_dquote }}
    - source: {{ spec.get('source', 'salt://failover/files/client.conf.jinja') | yaml_dquote }}
    - template: jinja
    - makedirs: true
    - mode: {{ spec.get('mode', '0644') | yaml_dquote }}
{%-     for arg in ('user', 'group') %}
{%-       if spec.get(arg) %}
    - {{ arg }}: {{ spec[arg] | yaml_dquote }}
{%-       endif %}
{%-     endfor %}
    - context:
        service: {{ service | json }}
        lock_key: {{ key | json }}
        postfix: {{ (env.get('postfix') or '') | json }}
        holder: {{ holder_id | json }}
        primary: {{ found[0] | json }}
{%-     if (spec.get('reload') or {}).get('cmd') %}

failover-client-{{ service }}-reload:
  cmd.run:
    - name: {{ spec['reload']['cmd'] | json }}
    - onchanges:
      - file: failover-client-{{ service }}
{%-     endif %}

{%-   else %}

failover-client-{{ service }}:
  test.succeed_without_changes:
    - name: "{{ service }}: no healthy primary in {{ env.get('postfix') or 'this environment' }} right now (lock {{ key }}{{ ' held by ' ~ holder_id if holder_id else ' free' }}); {{ path }} left as it is"
{%-   endif %}
{%- endfor %}
