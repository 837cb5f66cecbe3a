"""Traffic routing for Turnout: policies, per-request decisions, shadows, rollouts.

Pure logic and control-plane state only; nothing here imports the server. Modules:
``policy`` (TrafficPolicy), ``decide`` (route one request), ``window`` (per-version request
statistics), ``gates`` (canary verdicts), ``shadow`` (output comparison, background
mirroring), ``plan`` (rollout plans: weight and approval steps), ``rollout`` (rollout state
machine), ``rollout_signals`` (what a rollout is judged on), ``changes`` (what each
control-plane operation changes), ``store`` (files shared by worker processes, written with
``files``; ``audit`` records), ``committed`` (state as committed to the store),
``controller`` (ties them together).
"""
