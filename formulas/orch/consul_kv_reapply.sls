{#-
  Re-apply the app state on exactly the minions a Consul KV change concerns.

  Targets come from consul_targets.for_event: the master parses its accepted
  minion IDs with the ext_pillar's environment parser and matches them against
  the ext_pillar's KV layers of the changed keys (config/group/prod.gg/... ->
  the prod/gg minions).
  Grains are not used for targeting: they are minion-controlled.

  Rollout: batches of consul_react:kv:batch_size minions, one after another,
  with consul_react:kv:splay seconds between batches; a failed batch stops the
  rollout (each batch requires the previous one).

  Master config:
    consul_react:
      kv:
        sls: app            # state(s) to re-apply, comma-separated
        batch_size: 10
        splay: 10
-#}
{%- set ev = pillar.get('consul_event', {}) %}
{%- set conf = salt['config.get']('consul_react:kv', {}) %}
{%- set sls = conf.get('sls', 'app') %}
{%- set batch_size = [conf.get('batch_size', 10) | int, 1] | max %}
{%- set splay = conf.get('splay', 10) | int %}
{%- set targets = salt['saltutil.runner']('consul_targets.for_event', kwarg={'data': ev}) %}
{%- if not targets %}
consul_kv_no_targets:
  test.succeed_without_changes:
    - name: "no minion concerned by {{ ev.get('count', 0) }} changed key(s) under {{ ev.get('prefix', '?') }}"
{%- else %}
{%- for start in range(0, targets | length, batch_size) %}
{%- set n = loop.index %}
{%- if not loop.first %}
consul_kv_splay_{{ n }}:
  salt.runner:
    - name: test.sleep
    - s_time: {{ splay }}
    - require:
      - salt: consul_kv_reapply_{{ n - 1 }}
{%- endif %}

consul_kv_reapply_{{ n }}:
  salt.state:
    - tgt: {{ targets[start:start + batch_size] | json }}
    - tgt_type: list
    - sls: {{ sls | json }}
{%- if not loop.first %}
    - require:
      - salt: consul_kv_splay_{{ n }}
{%- endif %}
{%- endfor %}
{%- endif %}
