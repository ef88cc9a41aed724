"""The parts of `handlers.pacer`: Slack calls with per-method turns and errors (`calls`),
paced edits of live messages (`edits`) and per-channel posts (`posts`)."""
