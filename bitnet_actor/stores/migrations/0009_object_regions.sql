-- 0009: where each encrypted model object is stored (bitnet_actor/stores/objects/regions.py).
--
-- An organization's objects go to its home region's object store when BITNET_REGION_STORES gives that region
-- one, else to the default store (BITNET_S3_BUCKET or the data dir). region records which: a region name, or
-- NULL for the default store. Every read and delete goes to the store named here, so objects stay readable
-- when a region gets a store of its own later (they stay in the default store), and
-- `bitnet-actor admin set-region --move-data` moves them, switching this column once the copy is verified.
-- Every object stored before this migration went to the (then only) default store: NULL.

ALTER TABLE model_data_keys ADD COLUMN region text CHECK (region ~ '^[a-z0-9][a-z0-9_-]{0,63}$');
