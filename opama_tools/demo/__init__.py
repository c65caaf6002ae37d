"""``opama demo``: every stage of the toolkit on the embedded synthetic default (:mod:`.run`) and
its ``report.html`` (:mod:`.report`)."""
