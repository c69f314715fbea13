"""One reader per public raw format: a raw text line -> canonical fields or a quarantine reason.

- :mod:`.csv_logs`: Taobao, Tmall, ratings CSV, Amazon 2014 / 2018 ratings, MovieLens.
- :mod:`.json_reviews`: Amazon 5-core reviews and Yelp reviews (JSON lines).
- :mod:`.sequences_txt`: S3-Rec / FMLP-Rec sequences and their fixed negatives.
- :mod:`.recbole_atomic`: RecBole atomic ``.inter`` files, columns found by their header.
- :mod:`.fields`: the canonical fields and shared column builders; :mod:`.lines`: line
  positions from one scan.
"""

from spark_jobs.readers.csv_logs import CSV_FORMATS
from spark_jobs.readers.fields import Parsed, RawFormat
from spark_jobs.readers.json_reviews import JSON_FORMATS
from spark_jobs.readers.recbole_atomic import RECBOLE_INTER
from spark_jobs.readers.sequences_txt import S3REC

FORMATS: dict[str, RawFormat] = {f.name: f for f in (*CSV_FORMATS, *JSON_FORMATS, S3REC,
                                                     RECBOLE_INTER)}
QUARANTINE_REASONS = tuple(dict.fromkeys(r for f in FORMATS.values() for r in f.reasons))

__all__ = ["FORMATS", "QUARANTINE_REASONS", "Parsed", "RawFormat"]
