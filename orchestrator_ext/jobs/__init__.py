"""Example jobs, each a real, documented, tested use of the job API.

- ``grouped_stats``: reduce; count, sum, min, max, mean and standard deviation of an integer
  column per group. Exact: integer sums are associative, so any batching and any merge tree
  give the same result as one pass over all items.
- ``word_count``: reduce; occurrences of every word in a text column.
- ``text_metrics``: concat, batch mode; per-item word, character and line counts and the
  sha256 of the text.
- ``checksum``: concat, item mode; size and sha256 of the file each item names. A missing
  or unreadable file fails that item alone, which is dead-lettered.
- ``hash_chain``: concat, item mode; a chain of sha256 rounds per item, pure CPU (the
  workload of ``bench/cpu.py``).
- ``wait``: concat, item mode; each item waits a fixed time, as an API call does (the
  I/O-bound workload of ``bench/workers.py``).
"""
