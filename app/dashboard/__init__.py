"""The built-in dashboard: a static page on the public GraphQL API."""
