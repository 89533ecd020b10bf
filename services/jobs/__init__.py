"""The jobs service: Gearman work behind Thrift, with glammp's own gevent-native protocol layer
(`protocol`, `client`), the worker runner (`worker`, `cli`), the delayed-job schedule
(`schedule`), the result store (`results`) and the handler (`service`)."""
