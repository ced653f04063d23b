{#-
  Reactor for the consul_watch engine's service events (tag
  salt/consul/service/<name>): the healthy set of a service changed, so the
  configs that list it are rendered again (see orch/consul_service_rerender.sls
  and consul_react:services in the master config).
-#}
consul_service_rerender:
  runner.state.orchestrate:
    - args:
      - mods: orch.consul_service_rerender
      - pillar:
          consul_event: {{ data | json }}
