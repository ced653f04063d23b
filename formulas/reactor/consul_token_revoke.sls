{#- A minion's key deleted or rejected (salt-key -d / -r): its minted Consul
    token and policy go at once (docs/acl.md, "Minted minion tokens").

    master config:
      reactor:
        - 'salt/key':
          - salt://reactor/consul_token_revoke.sls
-#}
{%- if data.get('act') in ('delete', 'reject') and data.get('id') %}
consul-token-revoke:
  runner.consul_tokens.revoke:
    - args:
      - minion_id: {{ data['id'] | yaml_dquote }}
{%- endif %}
