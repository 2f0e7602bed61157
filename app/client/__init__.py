"""A Python client for the service, sync (`Client`) and async (`AsyncClient`), on httpx.

    from app.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as c:
        c.upload_adapter("mine", "path/to/peft-folder")
        y = c.predict([[0.0] * 1001], adapter="mine")
        for text in c.chat_stream([{"role": "user", "content": "Hi"}], model="mine"):
            print(text, end="", flush=True)

Every operation is written once, in `Operations` (app.client.operations); the sync client returns its result and the
async one a coroutine of it. Errors raise `ServiceError` with the envelope's status and code.
"""

from app.client.clients import AsyncClient, Client
from app.client.wire import Messages, ServiceError, raise_for_error

__all__ = ["AsyncClient", "Client", "Messages", "ServiceError", "raise_for_error"]
