# A top file for bootstrap alone: `startup_states: top` with
# `top_file: bootstrap/top.sls` in the minion config runs it at minion start
# (a highstate run, so custom modules, states and grains are synced first).
base:
  '*':
    - bootstrap
