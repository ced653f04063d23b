{#-
  bootstrap: what a freshly started minion with nothing but its hostname
  needs to be ready. Run it from the minion config (docs/bootstrap.md):

      startup_states: top
      top_file: bootstrap/top.sls       # or startup_states: highstate with bootstrap in your top

  From pillar `bootstrap` (one definition for the whole fleet, e.g. in Consul
  KV through the consul ext_pillar) and this minion's role (parsed from its
  ID: web01.prod.gg.mydc1... -> role web):

  * registers the role's services with the local Consul agent, tagged with
    the environment (type, group) and meta env: <postfix>; every check gets
    deregister_critical_service_after (default 10m) so that a service that
    stays down leaves the catalog by itself;
  * deregisters services this minion registered earlier that the role no
    longer lists;
  * renders the role's config files from pillar and discovery;
  * includes the role's further formulas (e.g. app, failover);
  * fires salt/consul/bootstrap/ready on the master's bus when all of it
    succeeded.

  The role only selects non-secret definitions from pillar; secrets come from
  the ext_pillar, which the master builds from the authenticated minion ID.
-#}
{%- set conf = salt['pillar.get']('bootstrap', {}) %}
{%- set env = salt['consul.env']() %}
{%- set me = opts['id'] %}
{%- set role_name = env.get('role') or 'default' %}
{%- set roles = conf.get('roles', {}) or {} %}
{%- set role = roles.get(role_name) or roles.get('default') or {} %}
{%- set id_format = conf.get('id_format', '{service}@{minion_id}') %}
{%- set dereg = conf.get('deregister_critical_service_after', '10m') %}
{%- set fields = {'minion_id': me, 'role': role_name, 'postfix': env.get('postfix') or '', 'host': env.get('host') or me} %}
{%- set keep = [] %}
{%- set done = [] %}
{%- if role.get('include') %}
include: {{ role['include'] | json }}
{%- endif %}

{%- for service, spec in (role.get('services', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   set sid = spec.get('id') or id_format.format(service=service, **fields) %}
{%-   do keep.append(sid) %}
{%-   set meta = dict(spec.get('meta', {}) or {}) %}
{%-   if env.get('postfix') %}
{%-     do meta.update({'env': env['postfix'], 'role': role_name}) %}
{%-   endif %}
{%-   set checks = [] %}
{%-   for check in spec.get('checks', []) or [] %}
{%-     set check = dict(check) %}
{%-     if dereg %}
{%-       do check.setdefault('deregister_critical_service_after', dereg) %}
{%-     endif %}
{%-     do checks.append(check) %}
{%-   endfor %}
{%-   do done.append({'consul': 'bootstrap-service-' ~ service}) %}

bootstrap-service-{{ service }}:
  consul.service_present:
    - name: {{ spec.get('name', service) | yaml_dquote }}
    - service_id: {{ sid | yaml_dquote }}
    - tags: {{ spec.get('tags', []) | json }}
    - env_tags: {{ conf.get('env_tags', True) | json }}
    - meta: {{ meta | json }}
{%-   for key in ('address', 'port', 'weights', 'enable_tag_override') %}
{%-     if spec.get(key) is not none %}
    - {{ key }}: {{ spec[key] | json }}
{%-     endif %}
{%-   endfor %}
    - checks: {{ checks | json }}
    - owner: bootstrap
{%- endfor %}

bootstrap-prune:
  consul.services_pruned:
    - keep: {{ keep | json }}
    - owner: bootstrap
{%- if done %}
    - require: {{ done | json }}
{%- endif %}

{%- for file in role.get('files', []) or [] %}
{%-   set path = file['path'].format(**fields) %}
{%-   do done.append({'file': 'bootstrap-file-' ~ loop.index}) %}

bootstrap-file-{{ loop.index }}:
  file.managed:
    - name: {{ path | yaml_dquote }}
    - source: {{ file.get('source', 'salt://bootstrap/files/role.conf.jinja') | yaml_dquote }}
    - template: jinja
    - makedirs: true
    - mode: {{ file.get('mode', '0644') | yaml_dquote }}
{%-   for key in ('user', 'group') %}
{%-     if file.get(key) %}
    - {{ key }}: {{ file[key] | yaml_dquote }}
{%-     endif %}
{%-   endfor %}
    - context:
        role: {{ role_name | json }}
        env: {{ {'type': env.get('type'), 'group': env.get('group'), 'datacenter': env.get('datacenter'), 'postfix': env.get('postfix')} | json }}
        settings_key: {{ file.get('pillar_key', role_name) | json }}
        discover: {{ file.get('discover', []) | json }}
{%- endfor %}

{%- if conf.get('ready_event', True) %}

bootstrap-ready:
  event.send:
    - name: salt/consul/bootstrap/ready
    - data:
        role: {{ role_name | json }}
        postfix: {{ (env.get('postfix') or '') | json }}
        services: {{ keep | json }}
    - require: {{ (done + [{'consul': 'bootstrap-prune'}]) | json }}
{%- endif %}
