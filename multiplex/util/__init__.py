"""Small helpers every part uses: `log` (the JSON-lines logger), `state` (the state directory's
paths) and `schema` (JSON-schema validation with its cache of configs already found valid).
Nothing is imported here, so `import multiplex.util` costs nothing."""
