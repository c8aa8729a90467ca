// Checks wxstream's Avro schemas for evolution with Apache Avro's own Java implementation
// (org.apache.avro.SchemaCompatibility), run by scripts/schema-check as a single-file program:
//
//   java -cp <avro jars> SchemaCompat.java SCHEMAS_DIR
//
// For every SCHEMAS_DIR/NAME.avsc, the released versions are SCHEMAS_DIR/history/NAME/vN.avsc.
// The schema must be BACKWARD compatible with the newest released one (a reader with the new
// schema reads data written with the old) and FORWARD compatible (a reader with the old schema
// reads data written with the new): what a registry's FULL rule asks, so producers and
// consumers of two wxstream versions can be upgraded in either order. A schema with no released
// version, a history file that does not parse, or a gap in the numbering fails the check too.
// Prints one line per schema and every incompatibility (its kind, the field's location and
// Avro's message); exits 1 when anything failed.

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeMap;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.SchemaCompatibility.Incompatibility;
import org.apache.avro.SchemaCompatibility.SchemaPairCompatibility;
import org.apache.avro.SchemaCompatibility.SchemaCompatibilityType;

public class SchemaCompat {
  public static void main(String[] args) throws IOException {
    if (args.length != 1) {
      System.err.println("usage: SchemaCompat SCHEMAS_DIR");
      System.exit(2);
    }
    File dir = new File(args[0]);
    File[] files = dir.listFiles((d, name) -> name.endsWith(".avsc"));
    if (files == null || files.length == 0) {
      System.err.println("no .avsc files in " + dir);
      System.exit(2);
    }
    Arrays.sort(files);
    List<String> failures = new ArrayList<>();
    for (File file : files) {
      String name = file.getName().replaceFirst("\\.avsc$", "");
      try {
        check(dir, name, file, failures);
      } catch (Exception e) {
        failures.add(name + ": " + e.getMessage());
        System.out.println(name + ": ERROR " + e.getMessage());
      }
    }
    if (!failures.isEmpty()) {
      System.out.println(failures.size() + " schema(s) failed the compatibility check");
      System.exit(1);
    }
    System.out.println("every schema is BACKWARD and FORWARD compatible with its newest released version");
  }

  private static Schema parse(File file) throws IOException {
    // A parser per file: each file is a whole schema, and defaults are validated.
    return new Schema.Parser().parse(file);
  }

  private static void check(File dir, String name, File file, List<String> failures)
      throws IOException {
    Schema current = parse(file);
    File historyDir = new File(new File(dir, "history"), name);
    File[] released = historyDir.listFiles((d, n) -> n.matches("v[0-9]+\\.avsc"));
    if (released == null || released.length == 0) {
      failures.add(name + ": no released version in " + historyDir);
      System.out.println(name + ": FAIL no released version in " + historyDir);
      return;
    }
    TreeMap<Integer, File> versions = new TreeMap<>();
    for (File f : released) {
      versions.put(Integer.parseInt(f.getName().replaceAll("[^0-9]", "")), f);
    }
    if (versions.firstKey() != 1 || versions.lastKey() != versions.size()) {
      failures.add(name + ": released versions are not v1..vN: " + versions.keySet());
      System.out.println(name + ": FAIL released versions are not v1..vN: " + versions.keySet());
      return;
    }
    int newest = versions.lastKey();
    Schema previous = parse(versions.get(newest));
    // BACKWARD: the new schema reads what the old one wrote; FORWARD: the reverse.
    SchemaPairCompatibility backward =
        SchemaCompatibility.checkReaderWriterCompatibility(current, previous);
    SchemaPairCompatibility forward =
        SchemaCompatibility.checkReaderWriterCompatibility(previous, current);
    boolean ok = true;
    for (Object[] pair : new Object[][] {{"BACKWARD", backward}, {"FORWARD", forward}}) {
      SchemaPairCompatibility result = (SchemaPairCompatibility) pair[1];
      if (result.getType() != SchemaCompatibilityType.COMPATIBLE) {
        ok = false;
        for (Incompatibility i : result.getResult().getIncompatibilities()) {
          String line = name + ": " + pair[0] + " incompatible with v" + newest + ": "
              + i.getType() + " at " + i.getLocation() + ": " + i.getMessage();
          failures.add(line);
          System.out.println(line);
        }
      }
    }
    String same = current.equals(previous) ? " (unchanged)" : " (changed)";
    System.out.println(name + ": " + (ok ? "OK" : "FAIL") + " against v" + newest + same);
  }
}
