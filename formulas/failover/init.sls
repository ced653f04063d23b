{#-
  failover: a member of a single-holder service (a DB primary and its
  replicas). Apply it on every candidate (highstate, startup_states, and the
  failover orchestration orch/consul_failover.sls does on failure).

  For each service in pillar consul_failover:services, on this minion:

  * the lock (locks/<service>/<postfix>/leader) is held by ANOTHER minion:
    this one is a replica. Its own instance of the service is deregistered
    (a former primary coming back must not be listed next to the new one)
    and the `demote` step runs (unless it is already a replica).
  * the lock is free or held by this minion: consul.single_holder_service
    takes the lock only if this minion's own checks pass on its agent, and
    registers the service (of two healthy candidates racing, one wins, the
    other stands by: result True, naming the winner, nothing registered).
    The `promote` step runs only while this minion holds the lock
    (consul.lock_held, read when the step runs). If the lock cannot be taken
    (the local server is down, its check stays critical), the `demote` step
    runs instead.

  ready: optional `cmd` that succeeds only while the local server is up;
  without it, a candidate whose server is down still never takes the lock,
  but waits up to wait_passing seconds for its checks before failing.

  promote / demote: `cmd` (+ unless, onlyif, cwd, runas, env, timeout) for
  cmd.run, or `state`: one full state declaration, e.g.
      promote:
        state:
          cmd.script:
            - name: salt://mydb/promote.sh
  See pillar.example.
-#}
{%- from "failover/map.jinja" import lock_key %}
{%- set conf = salt['pillar.get']('consul_failover', {}) %}
{%- set env = salt['consul.env']() %}
{%- set me = opts['id'] %}
{%- set id_format = conf.get('id_format', '{service}@{minion_id}') %}

{%- macro step(sid, spec, requisite, target, held=None) %}
{#- held: a lock key; the step runs only while this minion holds it (checked
    when the step runs, after the lock state: a candidate that lost the race
    to another healthy one stands by with result True, and must not promote). #}
{%-   set guard = [{'fun': 'consul.lock_held', 'key': held}] if held else [] %}
{%-   if spec.get('state') %}
{%-     for fun, args in spec['state'] | dictsort %}
{{ sid }}:
  {{ fun }}:
{%-       for arg in args or [] %}
    - {{ arg | json }}
{%-       endfor %}
{%-       if guard %}
    - onlyif: {{ guard | json }}
{%-       endif %}
    - {{ requisite }}:
      - {{ target | json }}
{%-     endfor %}
{%-   elif spec.get('cmd') %}
{{ sid }}:
  cmd.run:
    - name: {{ spec['cmd'] | json }}
{%-     for key in ('unless', 'cwd', 'runas', 'env', 'timeout', 'shell') %}
{%-       if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-       endif %}
{%-     endfor %}
{%-     set onlyif = ([spec['onlyif']] if spec.get('onlyif') is string else (spec.get('onlyif') or [])) + guard %}
{%-     if onlyif %}
    - onlyif: {{ onlyif | json }}
{%-     endif %}
    - {{ requisite }}:
      - {{ target | json }}
{%-   endif %}
{%- endmacro %}

{%- for service, spec in (conf.get('services', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   set key = lock_key(service, spec, env.get('postfix')) %}
{%-   set sid = spec.get('id') or id_format.format(service=service, minion_id=me, host=env.get('host') or me) %}
{%-   set holder = salt['consul.lock_holder'](key, consistency='consistent') %}
{%-   set holder_id = (holder or {}).get('value') or (holder or {}).get('session') %}
{%-   set lock_state = 'failover-' ~ service ~ '-lock' %}

{%-   if holder and holder_id != me %}
{#- Another minion is the primary: this one must not be listed or act as one. #}
{%-     set lock_state = 'failover-' ~ service ~ '-not-primary' %}

{{ lock_state }}:
  consul.service_absent:
    - name: {{ sid | yaml_dquote }}
{{ step('failover-' ~ service ~ '-demote', spec.get('demote') or {}, 'require', {'consul': lock_state}) }}

failover-{{ service }}-replica:
  test.succeed_without_changes:
    - name: "{{ service }}: the primary is {{ holder_id }} (lock {{ key }}); this minion is a replica"

{%-   else %}
{%-     set ready = spec.get('ready') or {} %}
{%-     if ready.get('cmd') %}
{#-       Not even try for the lock while the local server is down: taking it
          would keep the other candidates waiting for up to wait_passing. #}

failover-{{ service }}-ready:
  cmd.run:
    {#- Runs (and fails) only when the probe fails: no changes reported while ready. #}
    - name: {{ ('echo "' ~ service ~ ': local server not ready; not taking the lock" >&2; exit 1') | json }}
    - unless: {{ ready['cmd'] | json }}
{%-       for key in ('cwd', 'runas', 'env', 'timeout', 'shell') %}
{%-         if ready.get(key) is not none %}
    - {{ key }}: {{ ready[key] | json }}
{%-         endif %}
{%-       endfor %}
{%-     endif %}

{{ lock_state }}:
  consul.single_holder_service:
    - name: {{ service | yaml_dquote }}
    - service_id: {{ sid | yaml_dquote }}
    - lock_key: {{ key | yaml_dquote }}
    - env_tags: {{ conf.get('env_tags', True) | json }}
    - tags: {{ spec.get('tags', []) | json }}
    - checks: {{ spec.get('checks', []) | json }}
    - lock_delay: {{ spec.get('lock_delay', '5s') | json }}
    - wait_passing: {{ spec.get('wait_passing', 10) | json }}
{%-     if ready.get('cmd') %}
    - require:
      - cmd: failover-{{ service }}-ready
{%-     endif %}
{%-     for arg in ('address', 'port', 'meta', 'lock_wait', 'weights') %}
{%-       if spec.get(arg) is not none %}
    - {{ arg }}: {{ spec[arg] | json }}
{%-       endif %}
{%-     endfor %}
{{ step('failover-' ~ service ~ '-promote', spec.get('promote') or {}, 'require', {'consul': lock_state}, held=key) }}
{{ step('failover-' ~ service ~ '-demote', spec.get('demote') or {}, 'onfail', {'consul': lock_state}) }}
{%-   endif %}
{%- endfor %}
