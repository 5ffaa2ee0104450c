"""One home per method: each module (or folder) holds a method's inference policy and what
belongs to it alone. Shared machinery is in :mod:`dyncli.dynamic`."""
