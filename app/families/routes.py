"""Every family's HTTP routes. All are mounted whatever the base: a request to another family's
endpoint is a 422 that names the right one (Family.require), never a 404."""

from fastapi import APIRouter

from app.families.decoder.routes import router as decoder
from app.families.encoder.routes import router as encoder
from app.families.mlp.routes import router as mlp

ROUTERS: tuple[APIRouter, ...] = (mlp, encoder, decoder)
