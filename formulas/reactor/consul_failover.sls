{#-
  Reactor: failover of single-holder services (a DB primary). Map it to the
  consul_watch engine's events for the service and for the lock keys:
    reactor:
      - 'salt/consul/service/db':
        - salt://reactor/consul_failover.sls
      - 'salt/consul/kv/locks':
        - salt://reactor/consul_failover.sls
  The orchestration (orch/consul_failover.sls) reads Consul itself and does
  only what is needed: promote a replica when the lock is free, fence a
  former primary that came back, re-render the clients. See docs/failover.md.
-#}
consul_failover:
  runner.state.orchestrate:
    - args:
      - mods: orch.consul_failover
      - pillar:
          consul_event: {{ data | json }}
          consul_event_tag: {{ tag | json }}
