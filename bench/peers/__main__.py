"""``python -m bench.peers`` (``./run bench peers``): the side-by-side gossip benchmark,
``bench/gossip_peers.py``."""

from bench.gossip_peers import main

raise SystemExit(main())
