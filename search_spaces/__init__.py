"""Search-space YAML files shipped with the package."""
