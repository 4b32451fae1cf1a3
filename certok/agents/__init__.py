"""Agents on customers' hosts: hosts, managed certificates, and the httpsok.sh `/v1/nginx` protocol.

Modules: `nginx_config` (the uploaded configuration → certificate pairs and their names; the
text itself is dropped), `names` (which names certok can issue for, and why the others are
skipped), `hosts` (hosts, managed certificates and the agent's log, in the database),
`issuing` (a managed certificate's order, through the normal order engine), `renewal`
(when a deployed certificate is due), `routes` (the plain-text endpoints httpsok.sh calls).
"""
