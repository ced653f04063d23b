{#- The same SLS on every environment: the values come from the consul ext_pillar
    (KV layers chosen by the master from the minion ID), the postfix from the
    env grain. A pillar that failed to compile stops the highstate before this. #}
{%- set demo = pillar['pillar_demo'] %}

pillar_demo_config:
  file.managed:
    - name: {{ demo.get('path') or (opts['cachedir'] ~ '/pillar_demo/app.conf') }}
    - source: salt://pillar_demo/files/app.conf.j2
    - template: jinja
    - makedirs: True
    - mode: '0640'
