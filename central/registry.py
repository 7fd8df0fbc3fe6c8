"""The registry of CGN nodes Central dials."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from central._guard import uncancellable


class NodeRow(SQLModel, table=True):
    """The nodes table."""

    __tablename__ = "nodes"

    node_id: str = Field(primary_key=True)
    central_link_address: str
    work_address: str = ""
    miner_link_address: str = ""
    status_address: str = ""
    latitude_microdegrees: int = 0
    longitude_microdegrees: int = 0
    region: str = ""


@dataclass(frozen=True)
class NodeRecord:
    """A registered node."""

    node_id: str
    central_link_address: str
    work_address: str = ""
    miner_link_address: str = ""
    status_address: str = ""
    latitude_microdegrees: int = 0
    longitude_microdegrees: int = 0
    region: str = ""


class NodeRegistry:
    """Stores registered nodes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @uncancellable
    async def upsert(self, node: NodeRecord) -> NodeRecord:
        """Registers ``node`` or replaces its addresses."""
        async with AsyncSession(self._engine) as session:
            row = await session.get(NodeRow, node.node_id)
            if row is None:
                row = NodeRow(**vars(node))
            else:
                for key, value in vars(node).items():
                    setattr(row, key, value)
            session.add(row)
            await session.commit()
        return node

    @uncancellable
    async def remove(self, node_id: str) -> bool:
        """Removes a node; True when it was registered."""
        async with AsyncSession(self._engine) as session:
            row = await session.get(NodeRow, node_id)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
        return True

    @uncancellable
    async def list(self) -> list[NodeRecord]:
        """Every registered node."""
        async with AsyncSession(self._engine) as session:
            rows = (await session.exec(select(NodeRow))).all()
        return [NodeRecord(**r.model_dump()) for r in rows]
