{#-
  app.config: only the app's config file (formulas/app/files/app.conf.jinja),
  whose [db] hosts come from Consul discovery (consul.discover_hosts: healthy
  `db` instances tagged with this minion's type and group).

  The state orch/consul_service_rerender.sls runs (its default
  consul_react:services:<name>:sls) when the healthy set of db changes: a
  re-render only, no virtualenv, pip or secrets work, so the new host list
  lands in about a second. `app` (init.sls) includes it; the running app is
  restarted there when this file changes (apply `app` instead of `app.config`
  in consul_react if the app must pick the change up at once and cannot
  re-read its config).
-#}
{%- from 'app/map.jinja' import app, env with context %}

{%- if not env.get('postfix') %}
app-environment-unknown:
  test.fail_without_changes:
    - name: "minion ID {{ opts['id'] }} does not name a complete environment (type.group.datacenter)"
    - failhard: true
{%- endif %}

app-config:
  file.managed:
    - name: {{ app.config }}
    - source: salt://app/files/app.conf.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: true
    - context:
        app: {{ app | json }}
        env: {{ env | json }}
