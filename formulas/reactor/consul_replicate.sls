{#-
  Reactor: a KV change in the primary datacenter is copied to the others at
  once (consul_replicate.kv settles prefixes, CAS-safe, deletes included).
  Map it to the engine's tag for the watched prefix in the primary dc, e.g.
    reactor:
      - 'salt/consul/kv/config':
        - salt://reactor/consul_replicate.sls
  Prefixes, source and destinations come from consul:replicate in the master config.
-#}
consul_kv_replicate:
  runner.consul_replicate.kv: []
