"""Detections as an OGC GeoPackage (1.3) polygon layer, written with the standard library's sqlite3.

No GDAL is needed to write it: the file holds the three required metadata tables (`gpkg_spatial_ref_sys` with
the spec's three mandatory rows plus the scene's CRS, `gpkg_contents`, `gpkg_geometry_columns`) and one feature
table whose `geom` column holds GeoPackageBinary blobs (header "GP", version 0, little-endian, xy envelope, then
the WKB polygon). GDAL/OGR (QGIS, pyogrio, geopandas) reads it as a layer with `label`, `class` and `score`.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Sequence

import numpy as np

from ..files import atomic_path

APPLICATION_ID = 0x47504B47  # "GPKG" (OGC GeoPackage standard, requirement 2)
USER_VERSION = 10300  # GeoPackage 1.3.0
UNDEFINED_CARTESIAN = -1  # the spec's srs_id for coordinates without a CRS (here: scene pixels)
CUSTOM_SRS_ID = 100000  # a CRS without an EPSG code gets an id of its own

WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
             'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')


def geometry_blob(ring: np.ndarray, srs_id: int) -> bytes:
    """GeoPackageBinary of one polygon (a closed ring (n, 2)): header with the xy envelope, then little-endian WKB."""
    ring = np.asarray(ring, np.float64)
    flags = 0b0000_0011  # bit 0: little-endian; bits 1-3 = 1: envelope [minx, maxx, miny, maxy]
    header = b"GP" + struct.pack("<BBi4d", 0, flags, srs_id, ring[:, 0].min(), ring[:, 0].max(),
                                  ring[:, 1].min(), ring[:, 1].max())
    wkb = struct.pack("<BIII", 1, 3, 1, len(ring)) + ring.astype("<f8").tobytes()  # Polygon, one ring
    return header + wkb


def _srs_row(crs) -> tuple:
    """(srs_name, srs_id, organization, organization_coordsys_id, definition) of the scene's CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    wkt = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
    if epsg:
        return (f"EPSG:{epsg}", int(epsg), "EPSG", int(epsg), wkt)
    return ("scene CRS", CUSTOM_SRS_ID, "NONE", CUSTOM_SRS_ID, wkt)


def write_geopackage(path: str | os.PathLike, rings: Sequence[np.ndarray], labels: Sequence[int],
                     class_names: Sequence[str], scores: Sequence[float], crs=None, table: str = "detections") -> None:
    """Write the polygons `rings` (closed, in the CRS's coordinates, or pixels when `crs` is None) with their
    labels and scores as the layer `table` of a new GeoPackage at `path` (atomically: a failed write leaves no file)."""
    srs = _srs_row(crs)
    srs_id = srs[1] if srs else UNDEFINED_CARTESIAN
    with atomic_path(path) as temporary:
        db = sqlite3.connect(temporary)
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {USER_VERSION}")
            db.execute("""CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY
                KEY, organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL,
                description TEXT)""")
            rows = [("WGS 84 geodetic", 4326, "EPSG", 4326, WGS84_WKT),
                    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined"),
                    ("Undefined geographic SRS", 0, "NONE", 0, "undefined")]
            if srs and srs[1] not in (4326, -1, 0):
                rows.append(srs)
            db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, NULL)", rows)
            db.execute("""CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
                identifier TEXT UNIQUE, description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT
                (strftime('%Y-%m-%dT%H:%M:%fZ','now')), min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE,
                srs_id INTEGER, CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))""")
            db.execute("""CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
                geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
                CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
                CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
                CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))""")
            db.execute(f'CREATE TABLE "{table}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON, '
                       'label INTEGER, class TEXT, score DOUBLE)')
            points = np.concatenate([np.asarray(r, np.float64) for r in rings]) if len(rings) else None
            bounds = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()) \
                if points is not None else (None, None, None, None)
            db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, min_x, min_y, max_x, "
                       "max_y, srs_id) VALUES (?, 'features', ?, 'S5 oriented detections', ?, ?, ?, ?, ?)",
                       (table, table, *map(lambda v: None if v is None else float(v), bounds), srs_id))
            db.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (table, srs_id))
            db.executemany(f'INSERT INTO "{table}" (geom, label, class, score) VALUES (?, ?, ?, ?)',
                           [(geometry_blob(r, srs_id), int(l), class_names[int(l)], float(s))
                            for r, l, s in zip(rings, labels, scores)])
            db.commit()
        finally:
            db.close()


def read_geopackage_polygons(path: str | os.PathLike, table: str = "detections") -> dict:
    """Read back a layer written by `write_geopackage` (sqlite3 only): rings, labels, classes, scores, srs row."""
    db = sqlite3.connect(path)
    try:
        srs_id = db.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)).fetchone()[0]
        srs = db.execute("SELECT * FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)).fetchone()
        rings, labels, classes, scores = [], [], [], []
        for blob, label, name, score in db.execute(f'SELECT geom, label, class, score FROM "{table}" ORDER BY fid'):
            if blob[:2] != b"GP":
                raise ValueError(f"{path}: a geometry of {table} is not GeoPackageBinary.")
            envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 7]
            wkb = blob[8 + envelope:]
            order, kind, num_rings, count = struct.unpack("<BIII", wkb[:13])
            if (order, kind, num_rings) != (1, 3, 1):
                raise ValueError(f"{path}: a geometry of {table} is not a little-endian one-ring polygon.")
            rings.append(np.frombuffer(wkb[13 : 13 + 16 * count], "<f8").reshape(count, 2))
            labels.append(label)
            classes.append(name)
            scores.append(score)
        return {"rings": rings, "labels": labels, "classes": classes, "scores": scores, "srs": srs}
    finally:
        db.close()
