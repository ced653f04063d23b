{#-
  Failover of a single-holder service (a DB primary), run by
  reactor/consul_failover.sls when the consul_watch engine reports that the
  service's healthy set changed (salt/consul/service/<name>) or that a lock
  key changed (salt/consul/kv/locks). Everything is decided from Consul at
  render time, so running it twice, or for an event that needs nothing, is
  harmless.

  Per service in consul_react:failover (master config) and per environment of
  its candidates (minion IDs parsed on the master, never grains):

  * lock free (the primary's check went critical or its node failed, so
    Consul released the lock): apply the member state (failover) on the
    candidates one after another, the former holder last. The first candidate
    whose server is healthy takes the lock, registers as the primary and runs
    its promote step; the ones after it find the lock held and stay replicas.
    Then the environment's clients render their config (failover.client),
    then the former holder applies the member state: it finds the lock held,
    deregisters its stale instance and demotes.
  * lock held: candidates other than the holder that still have an instance
    of the service in the catalog (a former primary whose server came back)
    apply the member state, which deregisters it and demotes them; on a lock
    key event the clients re-render (idempotent).

  Master config:
    consul_react:
      failover:
        db:
          candidates: {role: db}        # filters on the ID-derived env (type, group, datacenter, role),
                                        # or {tgt: [id, ...]} (a list of minion IDs)
          clients: {role: web}          # same; always narrowed to the candidate's environment
          sls: failover                 # member state (default failover)
          client_sls: failover.client   # client state (default failover.client)
          lock_key: 'locks/{service}/{postfix}/leader'   # the default
          timeout: 120                  # per salt.state step
-#}
{%- from "failover/map.jinja" import lock_key %}
{%- set ev = pillar.get('consul_event', {}) %}
{%- set ev_keys = (ev.get('added') or []) + (ev.get('changed') or []) + (ev.get('deleted') or []) %}
{%- set all_conf = salt['config.get']('consul_react:failover', {}) or {} %}
{%- set ns = namespace(steps=0) %}

{%- macro targets(spec, extra) -%}
{%-   if spec.get('tgt') -%}
{{ spec['tgt'] | json }}
{%-   else -%}
{%-     set filters = {} -%}
{%-     for field in ['type', 'group', 'datacenter', 'role'] if spec.get(field) -%}
{%-       do filters.update({field: spec[field]}) -%}
{%-     endfor -%}
{%-     do filters.update(extra) -%}
{{ salt['saltutil.runner']('consul_targets.minions', kwarg=filters) | json }}
{%-   endif -%}
{%- endmacro %}

{%- macro apply(sid, tgt, sls, timeout) %}
{{ sid }}:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: list
    - sls: {{ sls | json }}
    - queue: true
    - timeout: {{ timeout | int }}
{%- endmacro %}

{%- for service, conf in all_conf | dictsort %}
{%-   set conf = conf or {} %}
{%-   set candidates = targets(conf.get('candidates') or {}, {}) | load_json %}
{%-   set sls = conf.get('sls', 'failover') %}
{%-   set client_sls = conf.get('client_sls', 'failover.client') %}
{%-   set timeout = conf.get('timeout', 120) %}
{#-   Candidates by environment: one lock (one primary) per environment. #}
{%-   set envs = {} %}
{%-   for mid in candidates %}
{%-     set env = salt['consul.env'](hostname=mid) %}
{%-     do envs.setdefault(env.get('postfix') or '', {'env': env, 'members': []})['members'].append(mid) %}
{%-   endfor %}

{%-   for postfix, group in envs | dictsort %}
{%-     set key = lock_key(service, conf, postfix) %}
{%-     if ev.get('service') != service and key not in ev_keys %}
{%-       continue %}
{%-     endif %}
{%-     set env = group['env'] %}
{%-     set scope = {} %}
{%-     for field in ['type', 'group', 'datacenter'] if env.get(field) %}
{%-       do scope.update({field: env[field]}) %}
{%-     endfor %}
{%-     set clients = targets(conf.get('clients') or {}, scope) | load_json %}
{%-     set holder = salt['consul.lock_holder'](key, consistency='consistent') %}
{%-     set tag = service ~ '_' ~ (postfix or 'default') | replace('.', '_') %}

{%-     if not holder %}
{#-       The former holder's ID stays in the released key's value. #}
{%-       set former = salt['consul.kv_get'](key, default='', consistency='consistent') %}
{%-       for mid in group['members'] if mid != former %}
{%-         set ns.steps = ns.steps + 1 %}
{{ apply('failover_' ~ tag ~ '_promote_' ~ loop.index, [mid], sls, timeout) }}
{%-       endfor %}
{%-       if clients %}
{%-         set ns.steps = ns.steps + 1 %}
{{ apply('failover_' ~ tag ~ '_clients', clients, client_sls, timeout) }}
{%-       endif %}
{%-       if former in group['members'] %}
{%-         set ns.steps = ns.steps + 1 %}
{{ apply('failover_' ~ tag ~ '_former', [former], sls, timeout) }}
{%-       endif %}

{%-     else %}
{%-       set stale = [] %}
{%-       for entry in salt['consul.catalog_service'](service) %}
{%-         set owner = (entry.get('ServiceMeta') or {}).get('salt_minion') %}
{%-         if owner in group['members'] and owner != holder.get('value') and owner not in stale %}
{%-           do stale.append(owner) %}
{%-         endif %}
{%-       endfor %}
{%-       if stale %}
{%-         set ns.steps = ns.steps + 1 %}
{{ apply('failover_' ~ tag ~ '_stale', stale, sls, timeout) }}
{%-       endif %}
{%-       if key in ev_keys and clients %}
{%-         set ns.steps = ns.steps + 1 %}
{{ apply('failover_' ~ tag ~ '_clients', clients, client_sls, timeout) }}
{%-       endif %}
{%-     endif %}
{%-   endfor %}
{%- endfor %}

{%- if not ns.steps %}
consul_failover_nothing_to_do:
  test.succeed_without_changes:
    - name: "{{ ev.get('service') or ev.get('prefix') or 'event' }}: every primary holds its lock; nothing to fail over"
{%- endif %}
