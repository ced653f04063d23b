{#-
  consul.register: register this minion's services and checks from pillar, on
  every highstate, tagged with its environment; deregister the services this
  minion registered earlier through this formula that have left pillar
  (owner consul.register). Services registered by anything or anyone else,
  by another formula (app, bootstrap) or by consul.primary are never touched.

  Pillar (see pillar.example):

    consul_register:
      id_format: '{service}@{minion_id}'   # service IDs; {service} {minion_id} {host}
      env_tags: true                       # add the env type and group as tags
      prune: true                          # deregister own services not in pillar
      services:
        web:
          port: 8080
          tags: [http]
          checks:
            - name: http
              http: http://127.0.0.1:8080/health
              interval: 10s
-#}
{#-
  The environment (tags, meta env) is consul.env(): the one the master derived
  from the authenticated minion ID (pillar consul_env, put there by the consul
  ext_pillar), so a minion that claims another environment in its grains or
  its own consul:env config cannot register into it.
-#}
{#- A minted token (docs/acl.md): the local agent gets it as its agent token,
    so this node registers under default-deny with no file copied to it. #}
{%- if salt['pillar.get']('consul_minion_token:sealed') %}

consul-agent-token:
  consul.agent_token_minted: []
{%- endif %}
{%- set conf = salt['pillar.get']('consul_register', {}) %}
{%- set services = conf.get('services', {}) or {} %}
{%- set env = salt['consul.env']() %}
{%- set minion_id = opts['id'] %}
{%- set env_tags = [] %}
{%- if conf.get('env_tags', True) %}
{%-   for field in ('type', 'group') %}
{%-     if env.get(field) %}
{%-       do env_tags.append(env[field]) %}
{%-     endif %}
{%-   endfor %}
{%- endif %}
{%- set id_format = conf.get('id_format', '{service}@{minion_id}') %}
{%- set keep = [] %}
{%- set ids = [] %}

{%- for service, spec in services | dictsort %}
{%-   set spec = spec or {} %}
{%-   set sid = spec.get('id') or id_format.format(service=service, minion_id=minion_id, host=env.get('host') or minion_id) %}
{%-   do keep.append(sid) %}
{%-   do ids.append('consul-register-' ~ service) %}
{%-   set meta = spec.get('meta', {}) or {} %}
{%-   if env.get('postfix') %}
{%-     do meta.update({'env': env['postfix']}) %}
{%-   endif %}

consul-register-{{ service }}:
  consul.service_present:
    - name: {{ spec.get('name', service) | yaml_dquote }}
    - service_id: {{ sid | yaml_dquote }}
    - tags: {{ ((spec.get('tags', []) or []) + env_tags) | json }}
    - meta: {{ meta | json }}
{%-   for key in ('address', 'port', 'weights', 'enable_tag_override') %}
{%-     if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-     endif %}
{%-   endfor %}
    - checks: {{ spec.get('checks', []) | json }}
    - owner: consul.register
{%- endfor %}

{%- if conf.get('prune', True) %}

consul-register-prune:
  consul.services_pruned:
    - keep: {{ keep | json }}
    - owner: consul.register
{%-   if ids %}
    - require:
{%-     for id in ids %}
      - consul: {{ id }}
{%-     endfor %}
{%-   endif %}
{%- endif %}
