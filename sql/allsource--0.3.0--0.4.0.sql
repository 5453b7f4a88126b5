-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit
