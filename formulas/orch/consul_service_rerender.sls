{#-
  Render again the configs that list a service whose healthy set changed.

  Which minions list which service is operator knowledge, so it is declared in
  the master config; targets are still derived from minion IDs on the master.
  The state gets pillar consul_service:{name, healthy} (the event's healthy
  instances: id, node, address, port, tags, datacenter); a template may use it
  or ask consul.discover again.
    consul_react:
      services:
        db:
          sls: app.config        # the state that renders the config file(s)
          type: prod             # optional filters on the ID-derived environment
          group: gg
          role: web
          batch_size: 10
          splay: 5
        cache:
          sls: app.config
          tgt: 'web*'            # or an explicit target (glob, list, compound...)
          tgt_type: glob
-#}
{%- set ev = pillar.get('consul_event', {}) %}
{%- set service = ev.get('service', '') %}
{%- set conf = salt['config.get']('consul_react:services', {}).get(service) %}
{%- if not conf %}
consul_service_not_mapped:
  test.succeed_without_changes:
    - name: "service {{ service }} changed; no consul_react:services entry for it"
{%- else %}
{%- if conf.get('tgt') %}
{%- set targets = conf['tgt'] %}
{%- set tgt_type = conf.get('tgt_type', 'glob') %}
{%- set batches = [targets] %}
{%- else %}
{%- set filters = {} %}
{%- for field in ['type', 'group', 'datacenter', 'role'] if conf.get(field) %}
{%- do filters.update({field: conf[field]}) %}
{%- endfor %}
{%- set minions = salt['saltutil.runner']('consul_targets.minions', kwarg=filters) %}
{%- set size = [conf.get('batch_size', 10) | int, 1] | max %}
{%- set tgt_type = 'list' %}
{%- set batches = [] %}
{%- for start in range(0, minions | length, size) %}
{%- do batches.append(minions[start:start + size]) %}
{%- endfor %}
{%- endif %}
{%- if not batches %}
consul_service_no_targets:
  test.succeed_without_changes:
    - name: "service {{ service }} changed; no minion matches its consul_react entry"
{%- endif %}
{%- for batch in batches %}
{%- set n = loop.index %}
{%- if not loop.first %}
consul_service_splay_{{ n }}:
  salt.runner:
    - name: test.sleep
    - s_time: {{ conf.get('splay', 5) | int }}
    - require:
      - salt: consul_service_rerender_{{ n - 1 }}
{%- endif %}

consul_service_rerender_{{ n }}:
  salt.state:
    - tgt: {{ batch | json }}
    - tgt_type: {{ tgt_type }}
    - sls: {{ conf.get('sls', 'app.config') | json }}
    {#- The healthy list travels along, so a template can use it directly. #}
    - pillar:
        consul_service:
          name: {{ service | json }}
          healthy: {{ ev.get('healthy', []) | json }}
{%- if not loop.first %}
    - require:
      - salt: consul_service_splay_{{ n }}
{%- endif %}
{%- endfor %}
{%- endif %}
