"""Writing logs: :mod:`tb_bnstats.write.summary` turns moments into the log
format's records, :mod:`tb_bnstats.write.eventfile` appends them to an event
file."""
