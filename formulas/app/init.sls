{#-
  app: the salt-consul example application, end to end.

  * one config template for every environment: the environment comes from
    the minion's postfix (prod.gg.mydc1), the db hosts from Consul discovery
    (healthy `db` instances tagged with this minion's type and group), the
    settings module from its TYPE (settings.prod, settings.dev, ...);
  * secrets from Consul KV (secrets/demoapp/<type>/<group>/<NAME>) into an
    environment file readable by its owner only, never in version control,
    never in the state's changes;
  * the app installed into a virtualenv from a pinned requirements file
    (demoapp==<version> from a local wheelhouse, no package index);
  * the app's service registered in Consul with an HTTP health check.
-#}
{%- from 'app/map.jinja' import app, env with context %}

{#- The config file (and the environment check) live in app.config, which the
    service-watch orchestration re-renders alone when db's healthy set changes. #}
include:
  - app.config
{%- set missing = [] %}
{%- for name in app.secrets %}
{%-   if salt['consul.kv_get'](app.secrets_prefix ~ '/' ~ env.type ~ '/' ~ env.group ~ '/' ~ name) is none %}
{%-     do missing.append(name) %}
{%-   endif %}
{%- endfor %}

{%- if missing %}
app-secrets-missing:
  test.fail_without_changes:
    - name: "secrets missing in Consul KV under {{ app.secrets_prefix }}/{{ env.type }}/{{ env.group }}/: {{ missing | join(', ') }}"
    - failhard: true
    {#- Before the included config file too: nothing is written without the secrets. #}
    - require_in:
      - file: app-config
{%- endif %}

app-root:
  file.directory:
    - name: {{ app.root }}
    - mode: '0755'
    - makedirs: true

app-source:
  file.recurse:
    - name: {{ app.src }}
    - source: salt://app/files/demoapp
    - clean: true
    - exclude_pat: E@__pycache__
    - require:
      - file: app-root

app-virtualenv:
  cmd.run:
    - name: {{ app.python }} -m venv {{ app.venv }}
    - creates: {{ app.venv }}/bin/python
    - require:
      - file: app-root

# The pinned version's wheel, built from the source with the project's own
# (stdlib-only) build backend: no index, nothing downloaded.
app-wheel:
  cmd.run:
    - name: >-
        {{ app.venv }}/bin/python -m pip wheel --quiet --disable-pip-version-check
        --no-index --no-build-isolation --no-deps -w {{ app.wheelhouse }} {{ app.src }}
    - onchanges:
      - file: app-source
    - require:
      - cmd: app-virtualenv

app-requirements:
  file.managed:
    - name: {{ app.root }}/requirements.txt
    - source: salt://app/files/requirements.txt.jinja
    - template: jinja
    - context:
        wheelhouse: {{ app.wheelhouse }}
        version: {{ app.version }}
    - require:
      - file: app-root

app-installed:
  cmd.run:
    - name: >-
        {{ app.venv }}/bin/python -m pip install --quiet --disable-pip-version-check
        --no-build-isolation -r {{ app.root }}/requirements.txt
    - unless: >-
        {{ app.venv }}/bin/python -c "import sys, importlib.metadata as m;
        sys.exit(m.version('demoapp') != '{{ app.version }}')"
    - require:
      - cmd: app-wheel
      - file: app-requirements

app-secrets:
  file.managed:
    - name: {{ app.env_file }}
    - source: salt://app/files/secrets.env.jinja
    - template: jinja
    - mode: '0600'
    - show_changes: false
    - context:
        app: {{ app | json }}
        env: {{ env | json }}
    - require:
      - file: app-root

{%- set start = app.venv ~ '/bin/demoapp --config ' ~ app.config ~ ' --env-file ' ~ app.env_file %}
{%- if app.run == 'systemd' %}

app-unit:
  file.managed:
    - name: /etc/systemd/system/demoapp.service
    - contents: |
        [Unit]
        Description=demoapp (salt-consul example)
        After=network-online.target
        [Service]
        ExecStart={{ start }}
        Restart=on-failure
        [Install]
        WantedBy=multi-user.target

app-running:
  service.running:
    - name: demoapp
    - enable: true
    - watch:
      - file: app-unit
      - file: app-config
      - file: app-secrets
      - cmd: app-installed
{%- elif app.run == 'background' %}

# Without an init system (containers, the demo, tests): the app daemonises
# itself with a pid file; a changed config, secret or install restarts it.
app-restart:
  cmd.run:
    - name: {{ app.venv }}/bin/demoapp --stop --pidfile {{ app.pidfile }}
    - onchanges:
      - file: app-config
      - file: app-secrets
      - cmd: app-installed

app-running:
  cmd.run:
    - name: {{ start }} --daemon --pidfile {{ app.pidfile }} --log {{ app.log }}
    - unless: {{ app.venv }}/bin/demoapp --config {{ app.config }} --probe
    - require:
      - cmd: app-restart
      - cmd: app-installed
      - file: app-config
      - file: app-secrets
{%- endif %}

app-consul-service:
  consul.service_present:
    - name: demoapp
    - service_id: {{ app.service_id | yaml_dquote }}
    - port: {{ app.port }}
    - env_tags: true
    - meta:
        settings: settings.{{ env.type }}
        env: {{ env.postfix | yaml_dquote }}
    - checks:
      - name: http
        http: http://127.0.0.1:{{ app.port }}/health
        interval: {{ app.check_interval }}
        timeout: 2s
    - owner: app
{%- if app.run in ('systemd', 'background') %}
    - require:
      - app-running
{%- endif %}
