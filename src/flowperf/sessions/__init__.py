"""Agent sessions: the session-trace format, importers of other trace formats, the recording proxy, and
the workflow source that replays sessions. May import config, errors, validation, rundir, engines, flows;
never run/, modes/, outputs/ or cli/."""
