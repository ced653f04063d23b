{#-
  Reactor for the consul_watch engine's KV events (tag salt/consul/kv/<prefix>).

  Hands the event (keys and environments, never values) to the orchestration
  that works out exactly which minions the changed keys concern, from minion
  IDs on the master, and re-applies the app state on them in batches.
  Wire it up in the master config, see formulas/reactor/README.md.
-#}
consul_kv_reapply:
  runner.state.orchestrate:
    - args:
      - mods: orch.consul_kv_reapply
      - pillar:
          consul_event: {{ data | json }}
          consul_event_tag: {{ tag | json }}
