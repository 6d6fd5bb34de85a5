"""`callstate load`: the command's options (`command`) and the run itself (`run`: calls,
the journal followed, the check and the report's figures)."""
