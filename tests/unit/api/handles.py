"""Recording stand-ins for Serve deployment handles (no Ray): ``Handle(name=result)``
answers ``handle.name.remote(...)`` with an awaitable of ``result`` (or a ``Stream``) and
records the calls."""


class _Method:
    def __init__(self, result, calls, name):
        self._result, self._calls, self._name = result, calls, name

    def remote(self, *args):
        self._calls.append((self._name, args))
        return Pending(self._result)


class Pending:
    """Awaitable like a DeploymentResponse; leaving it unawaited is fine, as in Serve."""

    def __init__(self, result):
        self.result = result

    def __await__(self):
        yield from ()
        return self.result


class Stream:
    """Like a streaming DeploymentResponseGenerator: an async iterator with cancel()."""

    def __init__(self, batches):
        self._batches = list(batches)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._batches:
            raise StopAsyncIteration
        batch = self._batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return batch

    def cancel(self):
        self.cancelled = True


class _StreamMethod(_Method):
    def remote(self, *args):
        self._calls.append((self._name, args))
        return self._result


class Handle:
    def __init__(self, **results):
        self.calls: list = []
        self._results = results

    def __getattr__(self, name):
        result = self._results.get(name)
        method = _StreamMethod if isinstance(result, Stream) else _Method
        return method(result, self.calls, name)

    def options(self, **_):
        return self
