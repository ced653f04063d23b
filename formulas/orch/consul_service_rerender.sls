{#-
  Roll out the re-render of the configs that list a service whose healthy set
  changed, in batches: reactor/consul_service.sls works out the targets
  (consul_react:services:<name>, see there and formulas/reactor/README.md) and
  publishes the state itself when they fit in one batch; it comes here with
  more minions than `batch_size` (or with none, or for a service that is not
  mapped, which is then said and nothing run).

  Pillar from the reactor: consul_event (the engine's event) and
  consul_targets (the minion IDs, from their ID-derived environment). Each
  batch runs the mapped state (`sls`, default app.config) with pillar
  consul_service:{name, healthy}, `splay` seconds after the previous batch,
  which it requires (a failed batch stops the rollout).
-#}
{%- set ev = pillar.get('consul_event', {}) %}
{%- set service = ev.get('service', '') %}
{%- set conf = salt['config.get']('consul_react:services', {}).get(service) %}
{%- set minions = pillar.get('consul_targets') or [] %}
{%- if not conf %}
consul_service_not_mapped:
  test.succeed_without_changes:
    - name: "service {{ service }} changed; no consul_react:services entry for it"
{%- elif not minions %}
consul_service_no_targets:
  test.succeed_without_changes:
    - name: "service {{ service }} changed; no minion matches its consul_react entry"
{%- else %}
{%- set size = [conf.get('batch_size', 10) | int, 1] | max %}
{%- for start in range(0, minions | length, size) %}
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
    - tgt: {{ minions[start:start + size] | json }}
    - tgt_type: list
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
