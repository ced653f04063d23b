{#-
  consul.primary: single-holder services (a DB primary). Each service below is
  registered on this minion only while it holds the Consul lock
  locks/<service>/<postfix>/leader (one holder per environment), and never on
  a minion whose own checks of it are critical; elsewhere the state stands by
  (True, no changes, naming the holder) and registers nothing. See pillar.example.
-#}
{%- set conf = salt['pillar.get']('consul_primary', {}) %}
{%- set env = salt['consul.env']() %}
{%- set id_format = conf.get('id_format', '{service}@{minion_id}') %}

{%- for service, spec in (conf.get('services', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   set sid = spec.get('id') or id_format.format(service=service, minion_id=opts['id'], host=env.get('host') or opts['id']) %}

consul-primary-{{ service }}:
  consul.single_holder_service:
    - name: {{ service | yaml_dquote }}
    - service_id: {{ sid | yaml_dquote }}
    - env_tags: {{ conf.get('env_tags', True) | json }}
    - tags: {{ spec.get('tags', []) | json }}
    - checks: {{ spec.get('checks', []) | json }}
{%-   for key in ('address', 'port', 'meta', 'lock_key', 'lock_delay', 'lock_wait', 'wait_passing') %}
{%-     if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-     endif %}
{%-   endfor %}
{%- endfor %}
