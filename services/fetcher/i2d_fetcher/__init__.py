"""The fetcher: downloads, filters, resizes and encodes images; one APPEND record per row.

- `service.py`: the loop over the `urls` topic (settings.py, metrics.py, offsets.py).
- `row.py`: one row's work, from the `urls` record to the APPEND record (outcome.py,
  reasons.py).
- `http/`: the network side: the guarded client (client.py), its DNS (resolver.py), the
  address policy (netguard.py), per-host limits (hosts.py), X-Robots-Tag (robots.py) and the
  byte budget for bodies in flight (budget.py).
- `imaging/`: the CPU side: format sniffing, the bomb guard, decode-resize-encode, EXIF, blur.
- `pool/`: where rows run: worker processes, or this process.
"""
