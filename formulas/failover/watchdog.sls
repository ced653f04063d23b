{#-
  failover.watchdog: the self-fencing watchdog on every DB candidate (apply
  it with failover; see files/fence_watchdog.py for the rule and the proof).

  For each service in pillar consul_failover:services that has a `watchdog`
  mapping, installs the watchdog and runs it as a systemd service,
  `salt-consul-fence-<service>`, which demotes the local server (the
  service's `demote` cmd) whenever this node cannot confirm, within
  `fence_after` seconds, that it holds the service's lock.

  Rendering fails unless the bound is shorter than the lock delay:
      fence_after + interval + timeout + demote_timeout < lock_delay
  (that is what makes a partitioned primary stop before anyone else may
  take the lock).

  Pillar (per service):
      watchdog:
        fence_after: 2        # seconds without confirmation before demoting
        interval: 0.25
        timeout: 0.5          # per request to the local agent
        demote_timeout: 1     # the demote command must finish within this
        consul: http://127.0.0.1:8500   # default: this minion's consul:address
        token_file: /etc/salt/consul-fence.token   # optional; read by the watchdog, never on its command line
-#}
{%- from "failover/map.jinja" import lock_key %}
{%- set conf = salt['pillar.get']('consul_failover', {}) %}
{%- set env = salt['consul.env']() %}
{%- set me = opts['id'] %}
{%- set consul_addr = (opts.get('consul') or {}).get('address') or 'http://127.0.0.1:8500' %}

{%- macro seconds(value) -%}
{%-   set text = value | string -%}
{%-   if text.endswith('ms') -%}{{ text[:-2] | float / 1000 }}{%- elif text.endswith('s') -%}{{ text[:-1] | float }}{%- elif text.endswith('m') -%}{{ text[:-1] | float * 60 }}{%- else -%}{{ text | float }}{%- endif -%}
{%- endmacro %}

salt-consul-fence-script:
  file.managed:
    - name: /usr/local/sbin/salt-consul-fence-watchdog
    - source: salt://failover/files/fence_watchdog.py
    - mode: '0755'

{%- for service, spec in (conf.get('services', {}) or {}) | dictsort %}
{%-   set spec = spec or {} %}
{%-   set wd = spec.get('watchdog') %}
{%-   if wd is mapping %}
{%-     set key = lock_key(service, spec, env.get('postfix')) %}
{%-     set fence_after = wd.get('fence_after', 2) | float %}
{%-     set interval = wd.get('interval', 0.25) | float %}
{%-     set timeout = wd.get('timeout', 0.5) | float %}
{%-     set demote_timeout = wd.get('demote_timeout', 1) | float %}
{%-     set delay = seconds(spec.get('lock_delay', '5s')) | float %}
{%-     if fence_after + interval + timeout + demote_timeout >= delay %}
{{ raise('failover.watchdog ' ~ service ~ ': fence_after + interval + timeout + demote_timeout (' ~ (fence_after + interval + timeout + demote_timeout) ~ 's) must be shorter than lock_delay (' ~ delay ~ 's), or a partitioned primary could still accept writes when the replica is promoted') }}
{%-     endif %}
{%-     set demote = (spec.get('demote') or {}).get('cmd') %}
{%-     if not demote %}
{{ raise('failover.watchdog ' ~ service ~ ': the watchdog needs a demote cmd') }}
{%-     endif %}
{%-     set args = ['--consul', wd.get('consul', consul_addr), '--key', key, '--me', me, '--demote', demote,
                    '--fence-after', fence_after, '--interval', interval, '--timeout', timeout,
                    '--demote-timeout', demote_timeout] %}
{%-     if wd.get('token_file') %}
{%-       do args.extend(['--token-file', wd['token_file']]) %}
{%-     endif %}

salt-consul-fence-{{ service }}-unit:
  file.managed:
    - name: /etc/systemd/system/salt-consul-fence-{{ service }}.service
    - mode: '0644'
    - contents: |
        [Unit]
        Description=salt-consul self-fencing watchdog for {{ service }}
        After=network-online.target consul.service

        [Service]
        ExecStart=/usr/local/sbin/salt-consul-fence-watchdog {{ args | map('string') | map('quote') | join(' ') }}
        Restart=always
        RestartSec=1

        [Install]
        WantedBy=multi-user.target

salt-consul-fence-{{ service }}:
  service.running:
    - enable: true
    - watch:
      - file: salt-consul-fence-script
      - file: salt-consul-fence-{{ service }}-unit
{%-   endif %}
{%- endfor %}
