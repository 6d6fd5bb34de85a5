"""`callstate conformance`: the command (`command`), the battery of lifecycle scenarios it runs
through a proxy (`battery` and the rows it drives: `calls`, `cancels`, `endings`, `pipes`,
`replies`), what the server saw (`journal`), the properties judged (`properties`), the run
(`run`, `server`) and its tables (`report`)."""
