"""Traffic routing for Turnout: policies, per-request decisions, shadows, rollouts.

Pure logic and control-plane state only; nothing here imports the server. Modules:
``policy`` (TrafficPolicy), ``decide`` (route one request), ``window`` (per-version
request statistics), ``gates`` (canary verdicts), ``shadow`` (output comparison, background
mirroring), ``rollout`` (rollout state machine), ``store`` (files shared by worker
processes, written with ``files``; ``audit`` records), ``controller`` (ties them together).
"""
