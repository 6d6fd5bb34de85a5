"""`callstate report` (`command`) and the HTML report `callstate load --html` writes too: the
checked run's figures (`run_report`), its page (`html_report`, `templates/`) and charts
(`svg_charts`)."""
