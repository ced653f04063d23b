{#-
  bootstrap.leave: deregister every service this minion registered through
  salt-consul (meta salt_minion: <this minion>), e.g. from a shutdown hook:
      ExecStop=/usr/bin/salt-call state.apply bootstrap.leave
  Services registered by anything else are not touched, nor is a
  single-holder service (consul.primary, failover): the node's agent leaving
  ends its session and frees its lock. To take the whole
  node out of Consul, run `consul leave` on its agent instead (or after).
-#}
bootstrap-leave:
  consul.services_pruned:
    - keep: []
    - owner: '*'
