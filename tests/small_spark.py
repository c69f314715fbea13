"""The tests' Spark: a JVM tuned for tiny inputs. Compiling hot code with C2 was half the JVM's
CPU on a tiny pipeline (42 of 83 CPU-seconds); client-compiler-only JIT and the serial
collector halve it (``spark.driver_java_options``; measured 41.5 -> 21.7 s)."""

JVM = "spark.driver_java_options=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
