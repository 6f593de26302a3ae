"""Pure decisions and the domain's model: keys, planner, schedule, window, durations. No I/O here."""
