"""Sending template messages, exactly once: ``budget`` (the token bucket and the daily quota in
Redis), ``planning`` (segments into delivery rows, in batches), ``sender`` (claim, send, mark,
flush — the discipline the module docstring there describes), ``recovery`` (rows of dead jobs
resolved by their marks, the periodic tick). Jobs reach them through ``templates_msg.jobs``."""
