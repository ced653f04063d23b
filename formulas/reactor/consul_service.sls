{#-
  Reactor for the consul_watch engine's service events (tag
  salt/consul/service/<name>): the healthy set of a service changed, so the
  configs that list it are rendered again on the minions mapped to it in the
  master config (consul_react:services, see formulas/reactor/README.md):

    consul_react:
      services:
        db:
          sls: app.config        # the state that renders the config file(s)
          type: prod             # optional filters on the environment parsed
          group: gg              #   from the accepted minion IDs
          role: web
          batch_size: 10
          splay: 5
        cache:
          sls: app.config
          tgt: 'web*'            # or an explicit target (glob, list, compound...)
          tgt_type: glob

  Targets are worked out here, once per event: an explicit tgt as given, else
  the accepted minions whose ID-derived environment matches the filters
  (consul_targets.minions; never grains, which minions set themselves). When
  they fit in one batch (an explicit tgt always does), the state job is
  published from here, with no orchestration in between: a health change
  reaches the configs in about a second instead of two or three (an
  orchestrate run loads a master minion and compiles its pillar before its
  first step). A larger set goes to orch/consul_service_rerender.sls, which
  rolls it out in batches with a splay between them. Either way the state gets
  pillar consul_service:{name, healthy}: the event's healthy instances (id,
  node, address, port, tags, datacenter); a template may use it or ask
  consul.discover again.

  Cost: the targeting runner runs while the reactor renders this file (a few
  hundred milliseconds in which the reactor handles no other event); service
  health events are rare next to that.
-#}
{%- set service = data.get('service', '') %}
{%- set conf = salt['config.get']('consul_react:services', {}).get(service) %}
{%- if conf %}
{%-   set size = [conf.get('batch_size', 10) | int, 1] | max %}
{%-   if conf.get('tgt') %}
{%-     set targets = conf['tgt'] %}
{%-     set tgt_type = conf.get('tgt_type', 'glob') %}
{%-   else %}
{%-     set filters = {} %}
{%-     for field in ['type', 'group', 'datacenter', 'role'] if conf.get(field) %}
{%-       do filters.update({field: conf[field]}) %}
{%-     endfor %}
{%-     set targets = salt['saltutil.runner']('consul_targets.minions', kwarg=filters) %}
{%-     set tgt_type = 'list' %}
{%-   endif %}
{%- endif %}

{%- if conf and targets and (tgt_type != 'list' or targets | length <= size) %}
consul_service_rerender:
  local.state.sls:
    - tgt: {{ targets | json }}
    - tgt_type: {{ tgt_type }}
    - args:
      - mods: {{ conf.get('sls', 'app.config') | json }}
      - pillar:
          consul_service:
            name: {{ service | json }}
            healthy: {{ data.get('healthy', []) | json }}
{%- else %}
{#- Not mapped, no target, or more than one batch: the orchestration says so, or rolls out. #}
consul_service_rerender:
  runner.state.orchestrate:
    - args:
      - mods: orch.consul_service_rerender
      - pillar:
          consul_event: {{ data | json }}
          consul_targets: {{ (targets if conf else []) | json }}
{%- endif %}
