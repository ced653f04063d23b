{#-
  consul.acl: the least-privilege ACL policies salt-consul needs, and the
  tokens that carry them. Apply it once per primary Consul datacenter (ACL
  policies and tokens replicate from there), from a minion whose Consul token
  may write ACLs (a management token, or one with acl = "write"):

    salt admin01 state.apply consul.acl

  Policies (names start with consul_acl:policy_prefix, default "salt-"); every
  rule is explained in docs/acl.md:

    salt-master  what the master does: ext_pillar reads and watches of the
                 layer folders, the runners (consul_replicate, consul_targets)
    salt-minion  what a minion's formulas do: consul.register, consul.primary,
                 consul.dns, discovery
    salt-dns     what a DNS client needs to resolve names, environment names
                 (prepared queries) included
    salt-sdb     (consul_acl:sdb set) the sdb driver's secret folders
    salt-cache   (consul_acl:cache set) the master's data cache, cache: consul
    salt-config  (consul_acl:config set) whoever writes the layer folders
    salt-mint    (consul_acl:mint true) the master's minting token: each
                 minion gets a token of its own (docs/acl.md, minted tokens)

  Tokens: consul_acl:tokens, each identified by its description, its secret
  only in secret_file (0600) on the host that applies this formula. Copy a
  minion's file to that minion and point its consul:token_file at it.

  DNS: consul_acl:dns_anonymous: true (default) gives the salt-dns policy to
  the anonymous token, so DNS answers under default-deny with no client
  token; false takes salt-dns off the anonymous token again (other policies
  there stay): then give the environment queries a token,
  consul_dns:query_token_file, see docs/acl.md.

  Pillar: see acl.pillar.example.
-#}
{%- set conf = salt['pillar.get']('consul_acl', {}) %}
{%- set prefix = conf.get('policy_prefix', 'salt-') %}
{%- set master = conf.get('master', {}) or {} %}
{%- set minion = conf.get('minion', {}) or {} %}
{%- set lock_prefix = minion.get('lock_prefix', 'locks/') %}
{%- set policies = {} %}

{%- set rules %}
# ext_pillar: read the layer folders (recursive reads, blocking watches, txn reads).
{%- for kv in master.get('pillar_prefixes', ['config/']) %}
key_prefix {{ kv | json }} { policy = "read" }
{%- endfor %}
{%- for kv in master.get('watch_prefixes', []) %}
# consul_watch engine: blocking reads of a watched KV prefix (salt/consul/kv/... events).
key_prefix {{ kv | json }} { policy = "read" }
{%- endfor %}
{%- for kv in master.get('replicate_prefixes', []) %}
# consul_replicate: read the source copy, write the destination copies.
key_prefix {{ kv | json }} { policy = "write" }
{%- endfor %}
{%- if lock_prefix not in master.get('watch_prefixes', []) %}
# consul_env.overview and the failover orchestration: who holds each single-holder lock.
key_prefix {{ lock_prefix | json }} { policy = "read" }
{%- endif %}
# Watches of service health (salt/consul/service/... events), discovery from the master.
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
# The failover orchestration asks who holds a lock (consul.lock_holder reads the lock's session).
session_prefix "" { policy = "read" }
# consul_replicate without a source datacenter configured asks its agent (/v1/agent/self).
agent_prefix "" { policy = "read" }
{%- endset %}
{%- do policies.update({prefix ~ 'master': {'description': 'salt-master: ext_pillar, watches, runners', 'rules': rules}}) %}

{%- set rules %}
# consul.register / consul.primary: register (and prune) this minion's services and their checks.
{%- for service in minion.get('services', []) %}
service {{ service | json }} { policy = "write" }
{%- endfor %}
# Discovery (consul.discover, templates), services_pruned listing the agent's services.
service_prefix "" { policy = "read" }
# Discovery needs the nodes of the instances; sessions are tied to a node's serfHealth.
node_prefix "" { policy = "read" }
# consul.primary: the lock session of a single-holder service, on the minion's own node.
session_prefix "" { policy = "write" }
# consul.primary: the lock keys (one holder per environment).
key_prefix {{ lock_prefix | json }} { policy = "write" }
{%- for service in minion.get('dns_services', []) %}
# consul.dns: the environment prepared-query template of {{ service }}.
query {{ (service ~ '.') | json }} { policy = "write" }
{%- endfor %}
{%- endset %}
{%- do policies.update({prefix ~ 'minion': {'description': 'salt-minion: register, primary, dns, discovery', 'rules': rules}}) %}

{%- set rules %}
# DNS: <node>.node.consul needs node read, <service>.service.consul service and node read,
# <name>.query.consul (environment names) query read plus what the query answers with.
node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
query_prefix "" { policy = "read" }
{%- endset %}
{%- do policies.update({prefix ~ 'dns': {'description': 'DNS clients: node, service and query reads', 'rules': rules}}) %}

{#- The optional policies, each made only when its pillar key is set. #}
{%- set sdb = conf.get('sdb') %}
{%- if sdb %}
{%-   set rules %}
# sdb://<profile>/<key> (the consul sdb driver): sdb.get reads; sdb.set and sdb.delete need write: true.
{%-     for kv in sdb.get('prefixes', ['secrets/salt/']) %}
key_prefix {{ kv | json }} { policy = {{ ('write' if sdb.get('write') else 'read') | json }} }
{%-     endfor %}
{%-   endset %}
{%-   do policies.update({prefix ~ 'sdb': {'description': 'sdb consul profiles: secret reads', 'rules': rules}}) %}
{%- endif %}
{%- set cache = conf.get('cache') %}
{%- if cache %}
{%-   set rules %}
# cache: consul (the master's minion data cache): store, fetch, list, flush, and CAS deletes of expired entries.
key_prefix {{ cache.get('prefix', 'salt/cache/') | json }} { policy = "write" }
{%-   endset %}
{%-   do policies.update({prefix ~ 'cache': {'description': 'the master data cache (cache: consul)', 'rules': rules}}) %}
{%- endif %}
{%- if conf.get('mint') %}
{%-   set rules %}
# The master's minting token (ext_pillar consul_token, runner consul_tokens): one token and one
# policy per minion, scoped by the environment the master derives from its ID. acl = "write" is
# Consul's only grant for that, and it can make any token: keep it on the master alone.
acl = "write"
# minion_tokens:dns_services: the environment DNS names answered by node identity (prepared queries).
query_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
{%-   endset %}
{%-   do policies.update({prefix ~ 'mint': {'description': 'the master: mints each minion its own token', 'rules': rules}}) %}
{%- endif %}
{%- set config = conf.get('config') %}
{%- if config %}
{%-   set rules %}
# Whoever writes configuration (an operator, a CI pipeline): the pillar layer folders, nothing else.
{%-     for kv in config.get('prefixes', ['config/']) %}
key_prefix {{ kv | json }} { policy = "write" }
{%-     endfor %}
{%-   endset %}
{%-   do policies.update({prefix ~ 'config': {'description': 'configuration writers: the layer folders', 'rules': rules}}) %}
{%- endif %}

{%- for name, policy in policies | dictsort %}

consul-acl-policy-{{ name }}:
  consul.acl_policy_present:
    - name: {{ name | yaml_dquote }}
    - description: {{ policy.description | yaml_dquote }}
    - rules: {{ policy.rules | trim | json }}
{%- endfor %}

{%- for description, spec in (conf.get('tokens', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}

consul-acl-token-{{ description }}:
  consul.acl_token_present:
    - name: {{ description | yaml_dquote }}
    - policies: {{ (spec.get('policies', []) or []) | json }}
{%-   for key in ('accessor_id', 'roles', 'service_identities', 'node_identities', 'local', 'secret_file') %}
{%-     if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-     endif %}
{%-   endfor %}
    - require:
{%-   for name in policies | sort %}
      - consul: consul-acl-policy-{{ name }}
{%-   endfor %}
{%- endfor %}

{%- if conf.get('dns_anonymous', True) %}

consul-acl-anonymous-dns:
  consul.acl_token_present:
    - name: anonymous token reads for DNS
    - accessor_id: 00000000-0000-0000-0000-000000000002
    - policies: [{{ (prefix ~ 'dns') | yaml_dquote }}]
    - require:
      - consul: consul-acl-policy-{{ prefix }}dns
{%- else %}

{#- Moving to a query token (docs/acl.md): salt-dns comes back off the
    anonymous token; any other policy an operator linked there stays. #}
consul-acl-anonymous-dns:
  consul.acl_token_present:
    - name: anonymous token without the DNS policy
    - accessor_id: 00000000-0000-0000-0000-000000000002
    - without_policies: [{{ (prefix ~ 'dns') | yaml_dquote }}]
{%- endif %}
