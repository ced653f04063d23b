# `state.apply consul`: the same as consul.register.
include:
  - consul.register
