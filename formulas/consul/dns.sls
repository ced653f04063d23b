{#-
  consul.dns: environment DNS names. For each service listed, a prepared-query
  template so that <service>.<type>.<group>.<datacenter>.query.consul (the
  service name plus the postfix, e.g. db.prod.gg.mydc1.query.consul) resolves
  to the healthy instances tagged with that type and group. Apply it on one
  minion per Consul datacenter (queries live in the datacenter's catalog).

  Under ACL default-deny a query runs with its caller's token (for DNS: the
  anonymous one) unless it stores a token: consul_dns:query_token_file (a file
  on this minion) or consul_dns:query_token_pillar (a pillar key holding it).
  docs/acl.md has both ways.
-#}
{%- set conf = salt['pillar.get']('consul_dns', {}) %}
{%- for service in conf.get('services', []) or [] %}

consul-dns-{{ service }}:
  consul.env_query_present:
    - name: {{ service | yaml_dquote }}
{%-   for key in ('datacenter', 'ttl', 'near', 'only_passing', 'failover_datacenters', 'query_token_file', 'query_token_pillar') %}
{%-     if conf.get(key) is not none %}
    - {{ key }}: {{ conf[key] | json }}
{%-     endif %}
{%-   endfor %}
{%- endfor %}
{%- if not conf.get('services') %}

{#- Nothing declared: succeed and say so (an empty SLS makes Salt exit non-zero). #}
consul-dns-nothing-declared:
  test.succeed_without_changes:
    - name: "consul_dns:services is empty on this minion: no environment DNS name to manage"
{%- endif %}
