"""The console: server-rendered pages under /console/ for tenants and operators."""
